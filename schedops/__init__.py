"""Second-level schedulers (2LS), one module each, built only on the public akaros_sim API."""
