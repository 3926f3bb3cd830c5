"""Pure rules: what is due, what an order costs, dates, holder data checks and link tokens. No I/O."""
