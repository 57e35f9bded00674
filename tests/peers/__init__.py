"""Local fakes of the external services the billing CLI talks to (peers), for tests."""
