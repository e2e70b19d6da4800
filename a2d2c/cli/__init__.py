"""What train.py and eval.py do before anything is built: check the command line, own the run dir."""
