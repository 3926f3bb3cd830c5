"""What the tests share: builders of input, fixtures, and ways to make things happen through the real services."""
