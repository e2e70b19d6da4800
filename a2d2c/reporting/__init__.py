"""Tables from finished runs: results beside the papers' numbers, the plan of a table before it runs,
and the summary a sweep writes."""
