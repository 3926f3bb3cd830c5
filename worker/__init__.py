"""pec-renewal: expiry notices, auto-renewal and renewal links for a PEC provider."""
