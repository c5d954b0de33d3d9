"""The sender role: delivers the box's results to the clinic's PACS from a durable outbox."""
