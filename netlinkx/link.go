package netlinkx

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync/atomic"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/wgctrl"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// RouteProtocol tags the routes meshd installs (rtm_protocol). It is not
// assigned in iproute2's rt_protos, so `ip route show proto 77` lists
// exactly meshd's routes.
const RouteProtocol netlink.RouteProtocol = 77

// Mode says which WireGuard implementation backs a link.
type Mode string

// The two backends.
const (
	ModeKernel    Mode = "kernel"
	ModeUserspace Mode = "userspace"
)

// ModeAuto, as Options.Want, is a kernel link where the kernel has the
// module and a userspace device where it does not.
const ModeAuto Mode = "auto"

// ErrKernelUnsupported means the kernel cannot create wireguard links (no
// module); the caller falls back to a userspace device.
var ErrKernelUnsupported = errors.New("kernel has no WireGuard support")

// ErrNotWireGuard means an interface with meshd's name exists but is neither
// a kernel WireGuard link nor a userspace one; meshd leaves it alone.
var ErrNotWireGuard = errors.New("interface exists and is not a WireGuard device")

// Options describe the link meshd owns.
type Options struct {
	Name       string
	MTU        int
	ListenPort int
	PrivateKey wgtypes.Key
	// Address is the host's mesh address, installed as a /128 so that the
	// host's own prefix is never routed into the tunnel.
	Address netip.Addr
	// StartUserspace starts a userspace WireGuard device called name that
	// outlives this process and returns once wgctrl can configure it. It is
	// used only when the kernel has no WireGuard support.
	StartUserspace func(name string, mtu int) error
	// Want is the backend a new link gets: ModeAuto (or "") tries the
	// kernel first, ModeKernel fails where the kernel has no module,
	// ModeUserspace never tries the kernel. An existing link is adopted in
	// whatever mode it has (recreating it would cut the tunnels); a
	// warning says when that is not the wanted one.
	Want   Mode
	Logger *slog.Logger
}

// Link is meshd's WireGuard link. Its methods are not safe for concurrent
// use; the control loop owns it.
type Link struct {
	opts Options
	wg   *wgctrl.Client
	// nh is one rtnetlink socket for the routes: a first sync adds
	// thousands, and a socket per request costs more than the request.
	nh     *netlink.Handle
	mode   Mode
	writes atomic.Uint64
	// index is the link's index when its mode was last detected: the same
	// index is the same device, so the mode need not be probed again.
	index int
	// read is the device as the last Ensure read it, when Ensure wrote
	// nothing after: the next Observe uses it instead of reading a device
	// of thousands of peers again. Any write drops it.
	read *wgtypes.Device
	// probed is the device as ensureLink read it to learn the link's mode,
	// for ensureDevice in the same Ensure: one read of thousands of peers,
	// not two.
	probed *wgtypes.Device
}

// Open prepares to manage the link described by opts. It changes nothing.
func Open(opts Options) (*Link, error) {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	wg, err := wgctrl.New()
	if err != nil {
		return nil, fmt.Errorf("open wgctrl: %w", err)
	}
	nh, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		wg.Close()
		return nil, fmt.Errorf("open rtnetlink: %w", err)
	}
	return &Link{opts: opts, wg: wg, nh: nh}, nil
}

// Close releases the wgctrl client and the rtnetlink socket. The link
// itself stays.
func (l *Link) Close() error {
	l.nh.Close()
	return l.wg.Close()
}

// Name is the interface name.
func (l *Link) Name() string { return l.opts.Name }

// Mode is the backend in use, known after Ensure.
func (l *Link) Mode() Mode { return l.mode }

// Writes counts every change meshd has made to the kernel through this Link.
func (l *Link) Writes() uint64 { return l.writes.Load() }

// PrivateKey is the key Ensure applies. Handle it as a secret.
func (l *Link) PrivateKey() wgtypes.Key { return l.opts.PrivateKey }

// SetPrivateKey changes the key Ensure applies (key rotation).
func (l *Link) SetPrivateKey(k wgtypes.Key) { l.opts.PrivateKey = k }

// DetectMode tells which backend an existing link uses. A tun link counts
// as userspace only when a WireGuard UAPI socket answers for it.
func DetectMode(link netlink.Link, uapiAnswers bool) (Mode, error) {
	switch link.Type() {
	case "wireguard":
		return ModeKernel, nil
	case "tuntap":
		if uapiAnswers {
			return ModeUserspace, nil
		}
		return "", fmt.Errorf("%s is a tun device with no WireGuard process behind it", link.Attrs().Name)
	default:
		return "", fmt.Errorf("%s is a %q link: %w", link.Attrs().Name, link.Type(), ErrNotWireGuard)
	}
}

// Ensure makes the link exist, with the configured MTU, mesh address,
// private key and listen port, and up. An existing link is adopted as it is
// and only what differs is written; a working link is never recreated.
func (l *Link) Ensure() error {
	l.read, l.probed = nil, nil
	link, err := l.ensureLink()
	if err != nil {
		return err
	}
	var errs []error
	if link.Attrs().MTU != l.opts.MTU {
		if err := l.count(netlink.LinkSetMTU(link, l.opts.MTU)); err != nil {
			errs = append(errs, fmt.Errorf("set MTU of %s to %d: %w", l.opts.Name, l.opts.MTU, err))
		}
	}
	if err := l.ensureAddress(link); err != nil {
		errs = append(errs, err)
	}
	if link.Attrs().Flags&net.FlagUp == 0 {
		if err := l.count(netlink.LinkSetUp(link)); err != nil {
			errs = append(errs, fmt.Errorf("set %s up: %w", l.opts.Name, err))
		}
	}
	if err := l.ensureDevice(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

func (l *Link) ensureLink() (netlink.Link, error) {
	link, err := netlink.LinkByName(l.opts.Name)
	var notFound netlink.LinkNotFoundError
	switch {
	case errors.As(err, &notFound):
		return l.create()
	case err != nil:
		return nil, fmt.Errorf("look up %s: %w", l.opts.Name, err)
	}
	dev, devErr := l.wg.Device(l.opts.Name)
	l.probed = dev
	mode, err := DetectMode(link, devErr == nil)
	if errors.Is(err, ErrNotWireGuard) {
		return nil, err
	}
	if err != nil {
		// A tun left behind by a dead userspace process carries no
		// traffic; replace it.
		l.opts.Logger.Warn("replacing stale tun device", "interface", l.opts.Name, "reason", err)
		if err := l.count(netlink.LinkDel(link)); err != nil {
			return nil, fmt.Errorf("delete stale %s: %w", l.opts.Name, err)
		}
		return l.create()
	}
	if l.mode != mode {
		l.opts.Logger.Info("adopted existing link", "interface", l.opts.Name, "mode", mode)
		if w := l.opts.Want; w != "" && w != ModeAuto && w != mode {
			l.opts.Logger.Warn("existing link is not of the configured mode; delete it to switch", "interface", l.opts.Name, "mode", mode, "wireguard", w)
		}
	}
	l.mode, l.index = mode, link.Attrs().Index
	return link, nil
}

func (l *Link) create() (netlink.Link, error) {
	l.probed = nil // a new device
	err := ErrKernelUnsupported
	if l.opts.Want != ModeUserspace {
		err = l.createKernel()
	}
	switch {
	case err == nil:
		l.mode = ModeKernel
	case errors.Is(err, ErrKernelUnsupported) && l.opts.Want == ModeKernel:
		return nil, fmt.Errorf("%w, and wireguard = kernel (auto would run a userspace device)", err)
	case errors.Is(err, ErrKernelUnsupported):
		if l.opts.StartUserspace == nil {
			return nil, fmt.Errorf("create %s: %w and no userspace fallback", l.opts.Name, err)
		}
		l.writes.Add(1)
		if err := l.opts.StartUserspace(l.opts.Name, l.opts.MTU); err != nil {
			return nil, fmt.Errorf("start userspace WireGuard device %s: %w", l.opts.Name, err)
		}
		l.mode = ModeUserspace
	default:
		return nil, err
	}
	l.opts.Logger.Info("created link", "interface", l.opts.Name, "mode", l.mode)
	link, err := netlink.LinkByName(l.opts.Name)
	if err != nil {
		return nil, fmt.Errorf("look up new link %s: %w", l.opts.Name, err)
	}
	l.index = link.Attrs().Index
	return link, nil
}

// createKernel adds a kernel wireguard link, or returns an error wrapping
// ErrKernelUnsupported when the kernel has no module for it.
func (l *Link) createKernel() error {
	la := netlink.NewLinkAttrs()
	la.Name = l.opts.Name
	la.MTU = l.opts.MTU
	err := netlink.LinkAdd(&netlink.Wireguard{LinkAttrs: la})
	if errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.EAFNOSUPPORT) {
		return fmt.Errorf("create wireguard link %s: %w (%v)", l.opts.Name, ErrKernelUnsupported, err)
	}
	if err != nil {
		return fmt.Errorf("create wireguard link %s: %w", l.opts.Name, err)
	}
	l.writes.Add(1)
	return nil
}

func (l *Link) ensureAddress(link netlink.Link) error {
	if !l.opts.Address.IsValid() {
		return nil
	}
	want := netip.PrefixFrom(l.opts.Address, l.opts.Address.BitLen())
	addrs, err := netlink.AddrList(link, netlink.FAMILY_V6)
	if err != nil {
		return fmt.Errorf("list addresses of %s: %w", l.opts.Name, err)
	}
	for _, a := range addrs {
		if p, ok := prefixOf(*a.IPNet); ok && p == want {
			return nil
		}
	}
	// NODAD: the address is unique by construction (the prefix claim), and
	// duplicate address detection would keep it unusable for a second.
	addr := &netlink.Addr{IPNet: ipNet(want), Flags: unix.IFA_F_NODAD}
	if err := l.count(netlink.AddrAdd(link, addr)); err != nil {
		return fmt.Errorf("add address %s to %s: %w", want, l.opts.Name, err)
	}
	l.opts.Logger.Info("added mesh address", "interface", l.opts.Name, "address", want)
	return nil
}

func (l *Link) ensureDevice() error {
	dev := l.probed
	l.probed = nil
	if dev == nil {
		var err error
		if dev, err = l.wg.Device(l.opts.Name); err != nil {
			return fmt.Errorf("read WireGuard device %s: %w", l.opts.Name, err)
		}
	}
	var cfg wgtypes.Config
	if dev.PrivateKey != l.opts.PrivateKey {
		cfg.PrivateKey = &l.opts.PrivateKey
	}
	if dev.ListenPort != l.opts.ListenPort {
		cfg.ListenPort = &l.opts.ListenPort
	}
	if cfg.PrivateKey == nil && cfg.ListenPort == nil {
		l.read = dev
		return nil
	}
	if err := l.count(l.wg.ConfigureDevice(l.opts.Name, cfg)); err != nil {
		return fmt.Errorf("configure key and port of %s: %w", l.opts.Name, err)
	}
	l.opts.Logger.Info("configured device", "interface", l.opts.Name, "public_key", l.opts.PrivateKey.PublicKey(), "listen_port", l.opts.ListenPort)
	return nil
}

// Remove deletes meshd's routes and the link. Deleting the link of a
// userspace device also ends its process. A missing link is not an error.
func (l *Link) Remove() error {
	link, err := netlink.LinkByName(l.opts.Name)
	var notFound netlink.LinkNotFoundError
	if errors.As(err, &notFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("look up %s: %w", l.opts.Name, err)
	}
	var errs []error
	routes, err := l.routes(link.Attrs().Index)
	if err != nil {
		errs = append(errs, err)
	}
	errs = append(errs, l.delRoutes(link.Attrs().Index, routes)...)
	if err := l.count(netlink.LinkDel(link)); err != nil {
		errs = append(errs, fmt.Errorf("delete %s: %w", l.opts.Name, err))
	} else {
		l.opts.Logger.Info("deleted link", "interface", l.opts.Name)
		errs = append(errs, waitUserspaceGone(l.opts.Name, 5*time.Second))
	}
	return errors.Join(errs...)
}

// UAPISocket is where a userspace WireGuard device listens (wireguard-go's
// ipc package); wgctrl finds userspace devices there.
func UAPISocket(name string) string { return "/var/run/wireguard/" + name + ".sock" }

// waitUserspaceGone waits until a userspace device whose link was deleted
// has ended (its UAPI socket is gone), so that a removed device no longer
// answers wgctrl when Remove returns. A kernel device has no socket.
func waitUserspaceGone(name string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		if _, err := os.Stat(UAPISocket(name)); errors.Is(err, os.ErrNotExist) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the userspace device process of %s still runs %s after its link was deleted", name, timeout)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// count records a write; the device read by Ensure is stale after it.
func (l *Link) count(err error) error {
	l.read = nil
	if err == nil {
		l.writes.Add(1)
	}
	return err
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

func prefixOf(n net.IPNet) (netip.Prefix, bool) {
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(a.Unmap(), ones), true
}

// linkIndex returns the index of the link, or an error naming it.
func (l *Link) linkIndex() (int, error) {
	link, err := l.nh.LinkByName(l.opts.Name)
	if err != nil {
		return 0, fmt.Errorf("look up %s: %w", l.opts.Name, err)
	}
	return link.Attrs().Index, nil
}
