"""Running a stream: the round loop (runner), the run directory (rundir) and reading runs back (runs)."""
