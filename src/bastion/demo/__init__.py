"""The demo story and its sample data: what ``bastion demo``, the tests and the benchmarks use.

Nothing in the library imports this package (``tests/test_architecture.py`` enforces it): it
sits beside ``cli`` at the top of the dependency graph. ``story`` runs the whole story;
``gateway``, ``releases`` and ``cleanroom`` are each part's scenario; ``platform`` holds the
demo principals and sample rows; ``release_sample`` builds the sample git repository.
"""
