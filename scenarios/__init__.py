"""The shipped scenarios, packaged as `akaros_sim.scenarios` so `akaros-sim list` and `run NAME` find them
after a plain `pip install` (their .py files are the 2LSes and handlers some of them load by file name)."""
