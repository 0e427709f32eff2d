"""What hutch's HTTP servers share (the controller's API and the node agents'): problem+json
for every error, and request body limits."""
