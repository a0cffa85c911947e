package agent

import (
	"context"
	"errors"
	"log/slog"

	"github.com/hashicorp/consul/api"

	"meshd.dev/meshd/catalogsync"
)

// Leave takes a node out of the mesh for good: its entry, health summary
// and hint through catalogsync.Withdraw, then what remove removes (the
// mesh link, a gateway's user link and firewall table). The running agent
// leaves through it (Agent.Leave), and so does `meshd leave` when no agent
// runs, so both leave the same traces. Every step runs whatever failed
// before it; the errors are joined.
func Leave(ctx context.Context, consul *api.Client, reg catalogsync.Registration, hintKey string, logger *slog.Logger, remove ...func() error) error {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	errs := []error{catalogsync.Withdraw(ctx, consul, reg, hintKey, logger)}
	for _, r := range remove {
		errs = append(errs, r())
	}
	return errors.Join(errs...)
}
