"""The SQL index: archive scans, fingerprints, videos, runs, tasks, job state and outcomes."""
