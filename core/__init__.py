"""What every layer of the suite uses: events and their axes, the run's lifecycle (a session),
the user-error type, registries, atomic files. It imports nothing else from the suite."""
