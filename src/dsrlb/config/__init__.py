"""BalanceNG-style configuration: the parser turns text into the plain data of `model`."""
