"""The data: cohort rules and funnel, PhysioNet fetch (credentials, transfer, checksums), decode, the image cache,
MIMIC-IV demographics."""
