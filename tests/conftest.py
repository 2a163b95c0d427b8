"""Shared pytest wiring: each fixture family lives in its own module under tests/fixtures/."""

pytest_plugins = [
    "fixtures.emulator",
    "fixtures.cluster",
    "fixtures.operator",
    "fixtures.media",
    "fixtures.faults",
]
