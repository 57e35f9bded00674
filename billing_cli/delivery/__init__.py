"""Side effects behind small interfaces: the PDF renderer, file store, payments, mailer."""
