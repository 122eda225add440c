"""The domain: image references, gate records, platforms, run ids, attestation statements and
signatures. Pure values and rules; it imports nothing from the rest of the gate but its errors."""
