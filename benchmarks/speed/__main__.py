"""``python -m benchmarks.speed``: every part of the speed benchmark."""

from benchmarks.speed import main

main()
