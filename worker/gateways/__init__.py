"""Payment gateways behind one small protocol: sandbox (default), Stripe, PayPal."""
