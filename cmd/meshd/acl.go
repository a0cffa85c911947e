package main

import (
	"fmt"
	"net/netip"
	"strings"

	"github.com/spf13/cobra"

	"meshd.dev/meshd/config"
	"meshd.dev/meshd/health"
	"meshd.dev/meshd/prefixalloc"
)

// aclPolicy is the least-privilege Consul ACL policy of one mesh host: write
// on its own node (where its instance lives: the agent registers services on
// its own node only, and another node's instances need write on that node),
// on the meshd service name, on its own prefix claim, its own gateway
// records and its health summary, and on the hint key and its ring
// (written on its own changes); read on everything else meshd watches.
func aclPolicy(node, service, hintKey string, prefix netip.Prefix) string {
	var b strings.Builder
	fmt.Fprintf(&b, "# Consul ACL policy for meshd on node %s (meshd acl-policy).\n", node)
	fmt.Fprintf(&b, "node %q {\n  policy = \"write\"\n}\n", node)
	b.WriteString("node_prefix \"\" {\n  policy = \"read\"\n}\n")
	fmt.Fprintf(&b, "service %q {\n  policy = \"write\"\n}\n", service)
	b.WriteString("service_prefix \"\" {\n  policy = \"read\"\n}\n")
	fmt.Fprintf(&b, "key %q {\n  policy = \"write\"\n}\n", prefixalloc.Key(prefix))
	fmt.Fprintf(&b, "key_prefix %q {\n  policy = \"write\"\n}\n", "meshd/gateways/"+node+"/")
	fmt.Fprintf(&b, "key %q {\n  policy = \"write\"\n}\n", health.SummaryPrefix+node)
	b.WriteString("key_prefix \"meshd/\" {\n  policy = \"read\"\n}\n")
	if hintKey != "" {
		// A hint names the local agent's node, which meshd asks its agent.
		fmt.Fprintf(&b, "agent %q {\n  policy = \"read\"\n}\n", node)
		fmt.Fprintf(&b, "key %q {\n  policy = \"write\"\n}\n", hintKey)
		// The ring of the last hints, written in the same transaction.
		fmt.Fprintf(&b, "key_prefix %q {\n  policy = \"write\"\n}\n", hintKey+"/")
	}
	return b.String()
}

func newACLPolicyCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "acl-policy",
		Short: "Print the least-privilege Consul ACL policy for this host's token",
		Long: "Print, as HCL, the Consul ACL policy a host's token needs: write on its own node, on\n" +
			"the meshd service, on its own prefix claim and gateway records, on the hint key and\n" +
			"its ring; read on the rest.\n" +
			"The prefix must be known: run it after `meshd init` (which claims the prefix with a\n" +
			"bootstrap token), e.g.\n" +
			"  consul acl policy create -name meshd-$(hostname) -rules \"$(meshd acl-policy)\"",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := loadNodeConfig(cmd)
			if err != nil {
				return err
			}
			if !cfg.Prefix.IsValid() {
				return usage(&config.Error{Key: "prefix", Expected: "this host's claimed prefix (run meshd init first, or pass --prefix)"})
			}
			fmt.Fprint(cmd.OutOrStdout(), aclPolicy(cfg.NodeName, cfg.Consul.Service, cfg.Consul.HintKey, cfg.Prefix))
			return nil
		},
	}
}
