package agent

import (
	"context"
	"time"

	"meshd.dev/meshd/health"
)

// summaryState is what the loop remembers of the summaries it published.
type summaryState struct {
	last health.Summary // published last, at at
	at   time.Time
	// check is when a summary was last computed (written or not):
	// computing one reads the device.
	check time.Time
}

// perNodeSpacing spaces work whose cost grows with the fleet (reading the
// whole device for a summary, writing the catalog snapshot or the
// planner's memory, each of n nodes): at most every 5 s, and on large
// fleets no more often than every 5 s per 1,000 nodes (50 s at 10,000), so
// that each costs a bounded share of a core however many nodes there are
// and however fast they change.
func perNodeSpacing(n int) time.Duration {
	return max(5*time.Second, time.Duration(n)*5*time.Millisecond)
}

// publishSummary writes this host's summary when it changed (at most every
// few seconds) or when the heartbeat is due. Failures are logged: the
// summary is for operators, never on the data plane's path.
//
// Computing a summary reads the whole device, which holds the device's
// configuration lock for as long (a userspace device of 10,000 peers: a
// fifth of a second), so it is done at most every perNodeSpacing (a minute
// at 12,000 peers); when a reconcile comes sooner, publishSummary returns when to
// look again. (By the peer count, not by how long the last one took: on a
// busy machine a small device's read can take long enough to starve the
// summary.)
func (a *Agent) publishSummary(ctx context.Context, now time.Time) (again time.Time) {
	since := now.Sub(a.summary.at)
	every := perNodeSpacing(len(a.planner.Desired()))
	if next := a.summary.check.Add(every); now.Before(next) {
		return next
	}
	a.summary.check = now
	s := health.Summarize(a.Status().Health(), health.Defaults, now)
	if s.Same(a.summary.last) && since < health.Heartbeat {
		return time.Time{}
	}
	if err := a.opts.Catalog.PutSummary(ctx, s); err != nil {
		a.logger.Debug("health summary not published", "err", err)
		return time.Time{}
	}
	a.summary.last, a.summary.at = s, now
	return time.Time{}
}
