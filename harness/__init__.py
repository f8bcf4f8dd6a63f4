"""The experiment harness: whole federations on one machine (``fedq run``), the chaos runner's
disturbances, the exactly-once audit and the baselines. Tooling, apart from the control plane."""
