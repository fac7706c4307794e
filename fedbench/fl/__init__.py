"""The federated round loop, client training, strategies and the simulated wire."""
