// slmnet under pm2: edit the env blocks, then
//   pm2 start deploy/pm2/ecosystem.config.js && pm2 save && pm2 startup
// pm2 logs slmnet-miner | pm2 restart slmnet-validator | pm2 stop all
const slmnet = "/opt/slmnet/.venv/bin/slmnet";
// Replace "0" with slmnet's netuid on this network (0 is the root network, not slmnet).
const chain = (wallet) => ["--network", "finney", "--netuid", "0", "--wallet-name", wallet, "--wallet-hotkey", "default"];

module.exports = {
  apps: [
    {
      name: "slmnet-miner",
      script: slmnet,
      interpreter: "none",
      args: ["miner", ...chain("miner"), "--model", "HuggingFaceTB/SmolLM2-1.7B-Instruct", "--port", "8091",
             "--external-ip", "203.0.113.10", "--external-port", "8091", "--dtype", "bfloat16"],
      kill_timeout: 90000, // ms: the miner stops its vLLM engine on SIGTERM
      restart_delay: 10000,
      autorestart: true,
    },
    {
      name: "slmnet-validator",
      script: slmnet,
      interpreter: "none",
      args: ["validator", ...chain("validator"), "--state-dir", "/var/lib/slmnet/validator",
             "--serve-reference", "HuggingFaceTB/SmolLM2-1.7B-Instruct", "--dtype", "float32",
             "--organic-from", "http://127.0.0.1:8000", "--metrics-port", "9101"],
      kill_timeout: 90000,
      restart_delay: 10000,
      autorestart: true,
    },
    {
      name: "slmnet-gateway",
      script: slmnet,
      interpreter: "none",
      args: ["gateway", ...chain("validator"), "--host", "0.0.0.0", "--port", "8000", "--external-ip", "203.0.113.10",
             "--db", "/var/lib/slmnet/gateway.sqlite"],
      kill_timeout: 30000,
      restart_delay: 5000,
      autorestart: true,
    },
  ],
};
