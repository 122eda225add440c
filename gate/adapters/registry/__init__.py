"""Registry port adapters: the OCI distribution client (local registries and any OCI upstream),
ACR import and ACR data-plane push (Azure), and the OCI attestation and signature stores."""
