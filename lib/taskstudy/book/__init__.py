"""The study as a book: the command line, the chapter pipeline, run records and the book's checks."""
