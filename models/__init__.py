"""The LIVE streaming model (training and evaluation issues build it here)."""
