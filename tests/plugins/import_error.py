import this_package_does_not_exist  # noqa: F401


def make():
    pass
