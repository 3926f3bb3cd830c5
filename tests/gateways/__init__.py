"""Payment gateway adapters: the sandbox on PostgreSQL, Stripe and PayPal over HTTP to local servers."""
