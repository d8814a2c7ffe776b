package fleet

import (
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
	"github.com/twmb/franz-go/pkg/sasl/plain"

	"github.com/edgegw/gateway/config"
	"github.com/edgegw/gateway/internal/testkit"
)

// The ACLs docs/fleet.md gives a box (status topic: Write, Describe; config
// topic: Read, Describe; no group) are enough for the fleet agent, and do
// not let the box write the config topic.
func TestDocumentedACLsAreEnough(t *testing.T) {
	acl := func(topic string, op kmsg.ACLOperation) kfake.ACL {
		return kfake.ACL{Resource: kmsg.ACLResourceTypeTopic, Name: topic, Pattern: kmsg.ACLResourcePatternTypeLiteral, Operation: op, Allow: true}
	}
	k := testkit.Kafka(t, testkit.Topics(4, "gateway.status", "gateway.config"), testkit.With(
		kfake.EnableSASL(), kfake.EnableACLs(), kfake.Superuser("PLAIN", "ops", "ops-secret"),
		kfake.User("PLAIN", "ship-7", "box-secret",
			acl("gateway.status", kmsg.ACLOperationWrite), acl("gateway.status", kmsg.ACLOperationDescribe),
			acl("gateway.config", kmsg.ACLOperationRead), acl("gateway.config", kmsg.ACLOperationDescribe))))
	priv, keys, _ := keyPair(t)

	// The operators push.
	opsCfg, err := ClientConfig(config.Kafka{SASL: config.SASL{Mechanism: "PLAIN", Username: "ops", Password: "ops-secret"}})
	if err != nil {
		t.Fatal(err)
	}
	ops, err := sarama.NewClient(k.Addrs, opsCfg)
	if err != nil {
		t.Fatal(err)
	}
	defer ops.Close()
	if _, err := Push(ops, "gateway.config", "ship-7", 5, []byte("unrouted: local\n"), priv); err != nil {
		t.Fatal(err)
	}

	// The box, with its own principal.
	ta := newTestAgent(t, k.Addrs, "ship-7", "gateway.config", keys)
	ta.a.opts.Config.Kafka.SASL = config.SASL{Mechanism: "PLAIN", Username: "ship-7", Password: "box-secret"}
	ta.a.fleet.StatusTopic = "gateway.status"
	ta.a.Start()
	defer ta.a.Close()
	testkit.Eventually(t, 30*time.Second, func() bool { return ta.applied.Load().Unrouted == "local" }, "the overlay read with the box's ACLs")
	c := testkit.Consume(t, k.Addrs, []string{"gateway.status"}, kgo.SASL(plain.Auth{User: "ops", Pass: "ops-secret"}.AsMechanism()))
	recs := c.WaitN(t, 1, 30*time.Second)
	var r Record
	if err := json.Unmarshal(recs[0].Value, &r); err != nil || r.Gateway != "ship-7" || r.Config.FleetVersion != 5 {
		t.Fatalf("status record written with the box's ACLs: %v %+v", err, r.Config)
	}

	// The box's credentials cannot write the config topic.
	boxCfg, _ := ClientConfig(config.Kafka{SASL: config.SASL{Mechanism: "PLAIN", Username: "ship-7", Password: "box-secret"}})
	boxCfg.Producer.Retry.Max = 0
	box, err := sarama.NewClient(k.Addrs, boxCfg)
	if err != nil {
		t.Fatal(err)
	}
	defer box.Close()
	_, err = Push(box, "gateway.config", "ship-7", 6, []byte("unrouted: reject\n"), priv)
	if !errors.Is(err, sarama.ErrTopicAuthorizationFailed) {
		t.Fatalf("a box wrote the config topic: %v", err)
	}
}
