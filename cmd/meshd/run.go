package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"syscall"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/spf13/cobra"

	"meshd.dev/meshd/agent"
	"meshd.dev/meshd/catalogsync"
	"meshd.dev/meshd/config"
	"meshd.dev/meshd/control"
	"meshd.dev/meshd/firewall"
	"meshd.dev/meshd/gateway"
	"meshd.dev/meshd/keystore"
	"meshd.dev/meshd/metrics"
	"meshd.dev/meshd/netlinkx"
	"meshd.dev/meshd/snapshot"
	"meshd.dev/meshd/trust"
)

func newRunCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "run",
		Short: "Run the agent in the foreground",
		Long: "Run the agent: publish this host in the Consul catalog, watch every other host and\n" +
			"keep the WireGuard link, peers and routes converged. SIGTERM or SIGINT stop it and\n" +
			"leave registration, link, peers and routes in place; `meshd leave` leaves the mesh.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := loadConfig(cmd)
			if err != nil {
				return err
			}
			if err := cfg.RequireMember(); err != nil {
				return usage(err)
			}
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return run(ctx, cfg)
		},
	}
}

// gcPercent is the agent's GOGC unless the environment sets one: its heap
// is mostly long-lived catalog state (tens of MB at 10,000 nodes), which
// Go's default of 100 lets grow to twice that before collecting.
const gcPercent = 75

func run(ctx context.Context, cfg *config.Config) error {
	logger := newLogger(cfg)
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(gcPercent)
	}
	// The identity, credential and key are checked before anything is
	// created: a bad credential or a key file others can read stops meshd
	// with nothing touched.
	signer, err := loadSigner(cfg, time.Now())
	if err != nil {
		return err
	}
	key, created, err := keystore.LoadOrCreate(cfg.KeyFile)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		return fmt.Errorf("create state directory: %w", err)
	}
	if created {
		logger.Info("created private key", "key_file", cfg.KeyFile, "public_key", key.Public())
	}
	consul, consulHTTP, err := consulClients(cfg)
	if err != nil {
		return err
	}
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("find own executable for the userspace device: %w", err)
	}
	link, err := netlinkx.Open(netlinkx.Options{
		Name:       cfg.Interface,
		MTU:        cfg.MTU,
		ListenPort: cfg.ListenPort,
		PrivateKey: key.WG(),
		Address:    cfg.MeshAddress(),
		StartUserspace: netlinkx.UserspaceStarter([]string{exe, "wireguard-userspace"},
			filepath.Join(cfg.StateDir, "userspace-"+cfg.Interface+".log")),
		Want:   netlinkx.Mode(cfg.WireGuard),
		Logger: logger,
	})
	if err != nil {
		return err
	}
	defer link.Close()

	var gw *gateway.Runner
	var gwInfo *gateway.Info
	if cfg.Gateway.Enabled {
		gw, gwInfo, err = newGateway(cfg, consul, logger, exe)
		if err != nil {
			return err
		}
		logger.Info("gateway role", "interface", cfg.Gateway.Interface, "endpoint", gwInfo.Endpoint,
			"pool", gwInfo.Pool, "public_key", gwInfo.PublicKey)
	}

	sock, err := control.Listen(cfg.StatusSocket)
	if err != nil {
		return err
	}
	defer os.Remove(cfg.StatusSocket)

	a := agent.New(agent.Options{
		Registration:       registration(cfg, key, gwInfo, signer),
		Prefix:             cfg.Prefix,
		ListenPort:         cfg.ListenPort,
		Rules:              cfg.Rules(),
		RemovalGrace:       cfg.RemovalGrace,
		MaxRemovalFraction: cfg.MaxRemovalFraction,
		MaxPeers:           cfg.MaxPeers,
		BreakerFloor:       breakerFloor,
		SnapshotPath:       filepath.Join(cfg.StateDir, snapshot.FileName),
		MemoryPath:         filepath.Join(cfg.StateDir, "planner.json"),
		ResyncInterval:     cfg.ResyncInterval,
		Catalog:            newCatalog(cfg, consul, consulHTTP, logger),
		Link:               link,
		Gateway:            gw,
		Logger:             logger,
	})
	logger.Info("starting", "node", cfg.NodeName, "interface", cfg.Interface, "prefix", cfg.Prefix,
		"endpoint", cfg.Endpoint, "public_key", key.Public(), "config", cfg.File)
	return serve(ctx, cfg, a, sock, logger)
}

// serve runs the agent with its status socket and metrics listener until
// ctx ends or the node leaves.
func serve(ctx context.Context, cfg *config.Config, a *agent.Agent, sock net.Listener, logger *slog.Logger) error {
	serveCtx, stopServe := context.WithCancel(ctx)
	served := make(chan error, 1)
	go func() { served <- control.Serve(serveCtx, sock, handler{a, cfg.KeyFile}) }()
	metricsDone := serveMetrics(serveCtx, cfg.MetricsAddress, a, logger)
	err := a.Run(ctx)
	stopServe()
	<-served
	<-metricsDone
	if errors.Is(err, agent.ErrLeft) {
		logger.Info("left the mesh")
		return nil
	}
	return err
}

// serveMetrics serves Prometheus metrics on addr until ctx is done. A
// listener that cannot start is logged, not fatal: metrics must never stop
// the data plane.
func serveMetrics(ctx context.Context, addr string, a *agent.Agent, logger *slog.Logger) <-chan struct{} {
	done := make(chan struct{})
	srv := &http.Server{Addr: addr, Handler: metrics.Handler(a.Status), ReadHeaderTimeout: 5 * time.Second}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		logger.Error("metrics listener not started", "metrics_address", addr, "err", err)
		close(done)
		return done
	}
	go func() {
		<-ctx.Done()
		srv.Close()
	}()
	go func() {
		defer close(done)
		srv.Serve(l)
	}()
	return done
}

// registration is this node's catalog entry, signed by its identity under
// a new serial (the agent adopts the catalog's when the entry is the same
// as before a restart); a gateway adds its role tag and what users'
// configurations need.
func registration(cfg *config.Config, key keystore.PrivateKey, gw *gateway.Info, signer *trust.Signer) catalogsync.Registration {
	r := catalogsync.Registration{
		Service:   cfg.Consul.Service,
		Node:      cfg.NodeName,
		PublicKey: key.Public(),
		Endpoint:  cfg.Endpoint,
		Prefix:    cfg.Prefix,
		Keepalive: cfg.Keepalive,
		Signer:    signer,
		Serial:    catalogsync.NewSerial(0),
	}
	if gw != nil {
		r.Tags = []string{gateway.Tag}
		r.Extra = gw.Meta()
	}
	return r
}

// gatewayInfo is what this gateway publishes for users' configurations.
func gatewayInfo(cfg *config.Config, key keystore.PrivateKey) *gateway.Info {
	return &gateway.Info{
		Node:      cfg.NodeName,
		PublicKey: key.Public(),
		Endpoint:  netip.AddrPortFrom(cfg.Endpoint.Addr(), uint16(cfg.Gateway.ListenPort)),
		Pool:      cfg.Gateway.Pool,
		Prefix:    cfg.Prefix,
	}
}

// newGateway prepares the gateway role: its own key (users' configurations
// name it, so rotating the mesh key does not cut them off), its user link
// on gateway.listen_port at this host's underlay address, and meshd's
// firewall table.
func newGateway(cfg *config.Config, consul *api.Client, logger *slog.Logger, exe string) (*gateway.Runner, *gateway.Info, error) {
	key, created, err := keystore.LoadOrCreate(cfg.Gateway.KeyFile)
	if err != nil {
		return nil, nil, err
	}
	if created {
		logger.Info("created gateway private key", "key_file", cfg.Gateway.KeyFile, "public_key", key.Public())
	}
	link, err := netlinkx.Open(netlinkx.Options{
		Name:       cfg.Gateway.Interface,
		MTU:        cfg.MTU,
		ListenPort: cfg.Gateway.ListenPort,
		PrivateKey: key.WG(),
		StartUserspace: netlinkx.UserspaceStarter([]string{exe, "wireguard-userspace"},
			filepath.Join(cfg.StateDir, "userspace-"+cfg.Gateway.Interface+".log")),
		Want:   netlinkx.Mode(cfg.WireGuard),
		Logger: logger,
	})
	if err != nil {
		return nil, nil, err
	}
	fw, err := firewall.Open()
	if err != nil {
		link.Close()
		return nil, nil, err
	}
	info := gatewayInfo(cfg, key)
	r, err := gateway.NewRunner(gateway.Options{
		Node:           cfg.NodeName,
		Prefix:         cfg.Prefix,
		Pool:           cfg.Gateway.Pool,
		Supernet:       cfg.MeshSupernet,
		Link:           link,
		MeshInterface:  cfg.Interface,
		Firewall:       fw,
		Consul:         consul,
		Datacenter:     cfg.Consul.Datacenter,
		ResyncInterval: cfg.ResyncInterval,
		SavedPath:      filepath.Join(cfg.StateDir, "gateway-records.json"),
		JIT:            cfg.Gateway.JIT,
		IdleTimeout:    cfg.Gateway.IdleTimeout,
		ListenPort:     cfg.Gateway.ListenPort,
		Logger:         logger.With("role", "gateway"),
	})
	if err != nil {
		link.Close()
		return nil, nil, err
	}
	return r, info, nil
}

// breakerFloor is how many removals at once never trip the circuit breaker,
// whatever fraction of the mesh they are: in a small mesh one host leaving
// is a large fraction.
const breakerFloor = 3

// handler serves the agent on the status socket.
type handler struct {
	a       *agent.Agent
	keyFile string
}

func (h handler) RotateKey(ctx context.Context) error {
	key, err := keystore.Load(h.keyFile)
	if err != nil {
		return err
	}
	return h.a.RotateKey(ctx, key.WG())
}

func (h handler) ReleaseRemovals(ctx context.Context) (int, error) { return h.a.ReleaseRemovals(ctx) }

func (h handler) StatusJSON() any                 { return h.a.Status() }
func (h handler) Leave(ctx context.Context) error { return h.a.Leave(ctx) }
