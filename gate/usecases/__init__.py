"""The use cases (service layer): each takes the ports it needs and decides from the ledger's
facts; none knows Azure, HTTP or a container engine."""
