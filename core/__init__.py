"""What every layer uses: events, a run's lifecycle, the user-error type, registries, atomic files; imports nothing."""
