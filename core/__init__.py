"""What every layer of the suite uses: events and their axes, the user-error type, registries,
atomic files. It imports nothing else from the suite."""
