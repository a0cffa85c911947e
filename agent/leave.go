package agent

import (
	"context"
	"errors"

	"meshd.dev/meshd/catalogsync"
	"meshd.dev/meshd/health"
)

// Catalog is what the agent needs of Consul; *catalogsync.Catalog is it.
// The agent never sees a hint: Watch delivers snapshots with hints already
// merged in.
type Catalog interface {
	// Watch delivers every new view of the service until ctx is done;
	// own is this node's service ID.
	Watch(ctx context.Context, own string, deliver func(catalogsync.Snapshot))
	// State is the watch's state, for status.
	State() catalogsync.State
	// Publish registers reg (again: after the catalog lost or changed it)
	// and announces it.
	Publish(ctx context.Context, reg catalogsync.Registration, again bool) error
	// Withdraw deregisters reg for good, deletes its health summary and
	// announces it.
	Withdraw(ctx context.Context, reg catalogsync.Registration) error
	// PutSummary publishes this node's health summary.
	PutSummary(ctx context.Context, s health.Summary) error
}

// Leave takes a node out of the mesh for good: its entry, health summary
// and hint through the catalog's Withdraw, then what remove removes (the
// mesh link, a gateway's user link and firewall table). The running agent
// leaves through it (Agent.Leave), and so does `meshd leave` when no agent
// runs, so both leave the same traces. Every step runs whatever failed
// before it; the errors are joined.
func Leave(ctx context.Context, cat Catalog, reg catalogsync.Registration, remove ...func() error) error {
	errs := []error{cat.Withdraw(ctx, reg)}
	for _, r := range remove {
		errs = append(errs, r())
	}
	return errors.Join(errs...)
}
