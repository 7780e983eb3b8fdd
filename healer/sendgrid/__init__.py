"""What SendGrid says about the emails healer sent: its signed event webhook (`POST /sendgrid/events`)."""
