"""Mail: rendering an email, the outbox queue and its relay, and the mailers that send."""
