"""Jobs (extract, status, verify) and launchers: the only layer that knows about configs."""
