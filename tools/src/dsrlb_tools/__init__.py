"""dsrlb-tools: what runs around the balancer, never on it: the lab fleet, the bench, network
namespace helpers and `dsrlb deploy`. `dsrlb lab|bench|deploy` delegate here."""
