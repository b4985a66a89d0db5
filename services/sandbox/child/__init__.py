"""What runs inside a zygote and its forked children. Standard library only: the zygote is
started with `python -I -S` and must not import the service's dependencies, let alone user
code."""
