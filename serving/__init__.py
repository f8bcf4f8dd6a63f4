"""The regional online service: the newest federated model, served in the region."""
