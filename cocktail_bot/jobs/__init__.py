"""Running a manifest on Hugging Face Jobs: the bundle a job starts from (``bundle``), submitting, following
and cancelling it (``client``), the caller's side of a run (``offload``), the job's side (``worker``), and the
results that come back through the job's log (``results``)."""
