"""dsrlb: a Direct Server Return load balancer with a BalanceNG-compatible config."""

__version__ = "0.1.0"
