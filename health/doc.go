// Package health holds meshd's one judgement of health: the thresholds,
// the verdict on one host (`meshd health`, `meshd status`), the summary a
// host publishes for the fleet, and the fleet view (`meshd mesh`) built
// from those summaries. It is pure: it reads values and returns values,
// so every verdict is tested without a host, a device or Consul.
package health
