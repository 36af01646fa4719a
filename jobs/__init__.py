"""Many videos -> one job: archive scanning, the SQL index, workers (in-process or Ray), schedules."""
