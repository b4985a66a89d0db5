"""Registry benchmark: blueprint validation time by size, Get/List latency and throughput."""


def main() -> None:
    from .__main__ import main as run
    run()
