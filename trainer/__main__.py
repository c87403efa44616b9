import os
import sys

from .cli import main

rc = main()
if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # (trainer.dist.launched, without importing torch)
    # A torchrun rank ends here, its run closed: the interpreter's teardown, with the collectives'
    # C++ threads still about, aborts a process now and then ("terminate called without an active
    # exception"), which torchrun reports as a failed job.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(rc or 0)
sys.exit(rc)
