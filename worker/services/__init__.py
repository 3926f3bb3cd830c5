"""The services: the daily scan, charges, orders, payments, the import, and what operators read."""
