"""What a run trains: each task owns its model, data loading, loss and metrics (base.py: the interface)."""
