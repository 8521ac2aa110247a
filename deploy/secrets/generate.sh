#!/usr/bin/env bash
# Create the secret files that deploy/docker-compose.yaml reads. Existing
# files are kept, so running it again only fills in what is missing.
#
#   cd deploy && ./secrets/generate.sh
#
# Needs only coreutils (od, base64, tr). The Discord webhook URL cannot be
# generated: put it into discord_webhook_url.txt yourself (see README.md).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
umask 077
chmod 700 .

# 24 random bytes as hex: safe inside URLs without escaping.
rand() { od -An -tx1 -N24 /dev/urandom | tr -d ' \n'; }
# Airflow's Fernet key: 32 random bytes, URL-safe base64.
fernet_key() { head -c 32 /dev/urandom | base64 | tr '+/' '-_' | tr -d '\n'; }

write() {  # write NAME VALUE: create NAME.txt unless it exists
    local file="$1.txt"
    if [[ -e "$file" ]]; then
        echo "keep    $file"
    else
        printf '%s' "$2" > "$file"
        echo "created $file"
    fi
}

value() { tr -d '\r\n' < "$1.txt"; }

write postgres_password "$(rand)"
write airflow_db_password "$(rand)"
write bridge_db_password "$(rand)"
write airflow_admin_password "$(rand)"
write grafana_admin_password "$(rand)"
write airflow_jwt_secret "$(rand)"
write airflow_api_secret_key "$(rand)"
write airflow_fernet_key "$(fernet_key)"
# The URLs embed the passwords above (hex, so no URL escaping is needed).
write airflow_db_url "postgresql+psycopg2://airflow:$(value airflow_db_password)@postgres:5432/airflow"
write bridge_db_url "postgresql+psycopg://airflow_bridge:$(value bridge_db_password)@postgres:5432/airflow"
# Syntactically valid placeholders so Alertmanager starts; notifications fail
# until the real URLs are filled in: the default channel, and one per team route.
for hook in discord_webhook_url discord_webhook_url_ml_team; do
    if [[ ! -e "$hook.txt" ]]; then
        printf '%s' "https://discord.invalid/api/webhooks/0/replace-me" > "$hook.txt"
        echo "created $hook.txt (placeholder: put the real webhook URL in it)"
    else
        echo "keep    $hook.txt"
    fi
done

# The containers run as different non-root users (postgres, airflow, the
# bridge, grafana, nobody) and compose bind-mounts these files with their host
# permissions, so the files must be readable by all of them. The directory
# itself stays private to its owner.
chmod 644 ./*.txt
